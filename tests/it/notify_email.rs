//! The email notifier against a local stand-in for its provider.
