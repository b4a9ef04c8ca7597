"""Setting a real pair up: ``dumont init`` writes a checked config and the keys, ``dumont doctor`` checks it all."""
