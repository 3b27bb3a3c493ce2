"""Calibration on the agent, from raw images: exposure and gain, white balance, lens shading.

It drives the camera only through the CameraBackend interface and reads frames from a FrameSource (the
streaming pipeline's listener on the agent, or the camera directly in scripts), so the same code runs on
the simulator, the fake Picamera2 and a real Pi.
"""
