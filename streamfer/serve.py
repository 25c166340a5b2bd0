"""`python -m streamfer.serve`: the server's command, kept at its name for users, the
Procfile and the deploy units; the server itself lives in streamfer/server/ (serve.py)."""

from streamfer.server.serve import main

if __name__ == "__main__":
    main()
