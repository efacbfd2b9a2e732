//! The webhook notifier against a local stand-in for its provider.
