"""Driver families (compute, network, storage), each one small interface + sim and real backends."""
