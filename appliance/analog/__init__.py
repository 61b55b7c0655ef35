"""Analog lines: the hook and ring inputs, the sound card, the caller-ID modem, and the line
controller that turns them into a call's events.
"""
