"""The pure core: messages, identifiers, rules, the in-memory graph and the resolver. No I/O."""
