"""Earnings: awards (challenges, app usage, referrals) and user statistics."""
