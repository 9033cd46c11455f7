"""1-D CNN movement classifier trained on the BasicMotions wearable-sensor data set."""
