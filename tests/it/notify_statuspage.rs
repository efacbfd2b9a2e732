//! The statuspage notifier against a local stand-in for its provider.
