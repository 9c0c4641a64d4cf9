"""Development tools for tests, demos and scripts; the server never imports them."""
