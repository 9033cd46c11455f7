"""What runs on devices and phones. Standard library (plus the runtime it drives) only, and
nothing else of edgeship: it ships alone, to devices with an older Python."""
