"""SQL lives here. Every function takes the session it runs on: the caller owns the transaction."""
