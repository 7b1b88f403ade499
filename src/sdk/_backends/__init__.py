"""Where the store's data lives: only this package touches Trackio."""
