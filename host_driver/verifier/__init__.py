"""The verifier: the relying party's side, which appraises what a zone signed.

It trusts only the manufacturer's root certificate (and, for evidence, the reference values);
the host that relayed what it appraises is not trusted. Every appraisal raises
``VerificationError`` whose ``check`` names the check that failed, or returns what was proven:

``evidence``  verify_evidence: the zone's state (measurements, debug, owner, applets)
``receipt``   verify_receipt: a job ran this applet on this input, with this output
``audit``     verify_audit, verify_audit_log: the audit log, whole and in order
``common``    the checks all three share: format, certificate validity, chain, signature
"""

from .audit import AuditEntry, AuditResult, verify_audit, verify_audit_log
from .common import AuditAnchor, VerificationError, load_root
from .evidence import AttestationResult, Reference, verify_evidence, verify_session
from .receipt import ReceiptResult, verify_receipt

__all__ = ["AttestationResult", "ReceiptResult", "Reference", "VerificationError",
           "AuditAnchor", "AuditEntry", "AuditResult", "verify_evidence", "verify_session",
           "verify_receipt",
           "verify_audit", "verify_audit_log", "load_root"]
