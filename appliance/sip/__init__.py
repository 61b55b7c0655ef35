"""SIP trunks: the appliance sits between the shop's PBX (or phones) and the operator's trunk,
relays SIP in both directions and anchors the media, so that it can play the notice to the caller
and record each side of the conversation in its own channel.

One module per job: `message` (SIP messages), `sdp` (session descriptions), `g711` (the codecs),
`transport` (SIP over UDP and TCP), `media` (the RTP anchor), `stereo` (the recording's timeline),
`proxy` (dialogs: what goes where, when a call starts and ends), `line` (the catalogue, spool and
archive of a trunk's calls), `trunk` (one trunk's event loop in the recorder).
"""
