"""Training-side code: datasets, margin heads and losses, training, distillation teacher, evaluation and
calibration, dlib model import, ONNX export, and their CLI commands.

Nothing here is imported by ``facedb serve``; the serving path lives in the parent package.
"""
