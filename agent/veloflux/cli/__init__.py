"""The ``veloflux-agent`` command line: parse, load the config, call one function,
exit. Commands are grouped by audience: ``local`` (the proxy beside it, once),
``service`` (the daemon and the operator commands that talk to it), ``models``
(train, list, show) and ``tools`` (simulator, Envoy bootstrap files); ``render``
draws the tables. The exit-code contract is in ``app``.
"""

from veloflux.cli import forecast, history, local, models, service, tools
from veloflux.cli.app import main

for _module in (local, service, models, history, forecast, tools):
    for _command in _module.COMMANDS:
        main.add_command(_command)

__all__ = ["main"]
