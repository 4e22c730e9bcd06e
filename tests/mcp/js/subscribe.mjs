// Follows billing://balance as a host does: resources/list, resources/read,
// resources/subscribe; prints one JSON line per event on stdout so that pytest
// can time each notifications/resources/updated against the Spend it made.
import assert from "node:assert/strict";
import { ResourceUpdatedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import { connect, main } from "./lib.mjs";

const URI = "billing://balance";
const updates = Number(process.env.MCP_UPDATES ?? "1");
const say = (line) => console.log(JSON.stringify(line));

await main(async (clients) => {
  const client = await connect("user");
  clients.push(client);
  assert.equal(client.getServerCapabilities().resources?.subscribe, true);
  const { resources } = await client.listResources();
  assert.deepEqual(resources.map((r) => r.uri), [URI]);
  const read = async () => JSON.parse((await client.readResource({ uri: URI })).contents[0].text);
  let seen = 0;
  const done = new Promise((resolve) => {
    client.setNotificationHandler(ResourceUpdatedNotificationSchema, async (note) => {
      assert.equal(note.params.uri, URI);
      say({ event: "updated" });  // first: the time it arrived is what is measured
      say({ event: "read", balance: await read() });
      if (++seen === updates) resolve();
    });
  });
  say({ event: "initial", balance: await read() });
  await client.subscribeResource({ uri: URI });
  say({ event: "subscribed" });
  await done;
  await client.unsubscribeResource({ uri: URI });
});
