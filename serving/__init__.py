"""Serving: a TF Serving client and a TF-Serving-protocol server.

Deploys alone: imports TensorFlow, tensorflow-serving-api and grpc, never
`components` or `pipeline`; it reads only the pushed SavedModel.
"""
