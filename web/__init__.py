"""The LAN web UI (Flask). It reads the store and never touches the hardware."""
