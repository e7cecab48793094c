"""The Open Inference Protocol (KServe v2) on the gateway: the pipeline as one model, over HTTP and gRPC.

``model`` is the protocol-free part both faces share (the model's metadata, images in, tensors out, the same
admission and result path as ``/v1/detect``); ``rest`` is the HTTP face (JSON and the binary tensor extension),
``grpc_face`` the gRPC one, with its messages made from the vendored ``grpc_predict_v2.proto`` by ``codegen``.
"""
