"""The attacker: a transparent gRPC tap that records the edge-cloud traffic, the capture store,
the attack algorithms (model inversion, and later membership, attribute and gradient inversion),
image metrics, the ``attacker`` CLI and the lab REST API."""
