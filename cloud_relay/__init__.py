"""The cloud relay: verifies and stores what devices publish, settles, and serves the clinic API."""
