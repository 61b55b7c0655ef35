"""The store: spool files of calls in progress, the archive of finished recordings, the catalogue
(the one place SQL on calls lives), the evidence ledger, exports, and retention with its cleaner.
"""
