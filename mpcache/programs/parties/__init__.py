"""The programs each party runs under torchrun (benches, the private chat) and their reports."""
