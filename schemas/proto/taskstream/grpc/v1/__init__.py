"""taskstream.v1: messages (``*_pb2``) and service stubs (``*_pb2_grpc``) generated from the ``.proto`` files here."""
