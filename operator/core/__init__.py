"""The operator's pure core: one reconcile as functions of plain data (spec in; desired objects,
status and Events out), with no Kubernetes or network calls. The kopf shell around it lives one
folder up.
"""
