"""How Dumont reaches hosts: OpenSSH (with pinned keys and multiplexing) and rsync over it."""
