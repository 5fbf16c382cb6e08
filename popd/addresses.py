"""How a client address is counted: the key the per-address caps and the
guessing counters share.

Runs in: the supervisor (admission) and the broker (throttle keys).
"""
import ipaddress


def address_key(ip):
    """IPv4 addresses count one by one; IPv6 per /64, since one subscriber
    usually holds a whole /64."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return str(addr)
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))
