"""The config layer behind :mod:`txcmux.config` and ``twistd cmux``.

Read top to bottom, a config file goes through:

- ``_values``: the words of every message (where a value is, what was found,
  what was expected) and the checks of single values and of tables of keys;
- ``_endpoints`` and ``_matchers``: endpoint strings and matcher tables,
  explained in the user's terms when they are wrong;
- ``_schema``: what a file may say, as tables of keys, checked into a
  :class:`~txcmux.config.Config`;
- ``_build``: a Config made into a service of factories and listeners;
- ``_twistd``: the ``twistd cmux`` command.
"""
