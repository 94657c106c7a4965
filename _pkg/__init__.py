"""taskstream: a distributed task scheduler built as an event-sourced system on Kafka.

The distribution is split into packages by role (see DESIGN.md §1):
``taskstream.schemas`` (events, codec, topics, settings) is imported by
``taskstream.streams`` (the processor), ``taskstream.executors`` (the
runtime and handler SDK) and ``taskstream.api`` (the HTTP gateway);
``taskstream.cli`` wires them into commands.
"""

__version__ = "0.1.0"
