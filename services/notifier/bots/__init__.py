"""Chat adapters: one :class:`~services.notifier.bots.base.ChatBot` Protocol, an adapter per
platform (Matrix, the reference; Slack; Telegram), and the command parsing they share."""
