"""Processes and links: party start-up and faults, TLS links, the direct link between the parties,
the TTP dealer's service, launch, the chat's control channel and lobby, cost accounting."""
