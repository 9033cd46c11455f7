"""The build half: spec -> export -> recipe passes -> validate -> record -> artifact folder.

It never imports the ship half: the two meet at ``artifacts/<deployment>/``.
"""
