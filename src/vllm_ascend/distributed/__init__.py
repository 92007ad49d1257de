"""Device communicators for the plugin's platforms."""
