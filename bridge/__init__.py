"""The StepFoley bridge: the OSC protocol, the engine server and its client.

Nothing here imports torch: the client runs inside DAW helpers that must start fast.
"""
