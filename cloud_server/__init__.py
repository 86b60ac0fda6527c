"""The cloud: a gRPC server that runs the tail of every deployment in the artifact store."""
