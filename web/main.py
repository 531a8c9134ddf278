"""Browser entry point (loaded by index.html through PyScript): start the dashboard page."""

from client.browser.app import main

main()
