"""Hashes Dovecot itself made, shared by the passwd tests: `doveadm pw`
output for "test123" (PostfixAdmin's interop fixtures)."""
DOVECOT_SHA512 = ("{SHA512-CRYPT}$6$MViNQUSbWyXWL9wZ$63VsBU2a/ZFb9f/dK4EmaXAB"
                  "E9jAcNltR7y6a2tXLKoV5F5jMezno.2KpmtD3U0FDjfa7A.pkCluVMlZJ."
                  "F64.")
DOVECOT_SHA256 = ("{SHA256-CRYPT}$5$CFly6wzfn2az3U8j$EhfQPTdjpMGAisfCjCKektLk"
                  "e5GGEmtdLVaCZSmsKw2")
