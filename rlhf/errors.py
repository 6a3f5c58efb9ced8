"""The error for bad input, raised before Ray starts and reported by rlhf.train with exit
code 2. A leaf module, so that config checks and the code they resolve can both raise it."""


class ConfigError(ValueError):
    """A config value is wrong. `key` is the dotted path of the offending field."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config error at '{key}': {message}")
