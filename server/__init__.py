"""The HTTP front end: relying-party, device and operator interfaces."""
