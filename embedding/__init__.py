"""Face embedding: decoding, the face path (detect, align, assess), model files and embedders.

The serving side lives here and imports neither fastapi nor sqlalchemy; training, evaluation and model import
live in `embedding.train`. Import from the submodules (nothing is re-exported, so importing one part never
pulls in torch or onnxruntime for another).
"""
