"""Camera backends: the interface, the simulated sensor (default) and the Picamera2 backend."""
