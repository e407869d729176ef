"""Pure routing data structures: subscription trie, shared groups, retained store."""
