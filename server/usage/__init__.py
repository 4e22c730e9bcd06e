"""Usage: Spend, Reserve, Capture and Release, the calls that make
`insufficient_credits` real."""
