"""Code that two or more DB Genie services use: contracts, codec, config, logging, errors."""
