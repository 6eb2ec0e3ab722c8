"""Running the model: prefill, the decode loop, a chat conversation, streamed output (plaintext or
any Backend)."""
