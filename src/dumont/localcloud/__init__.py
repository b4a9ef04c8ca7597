"""The local cloud: real sshd hosts on 127.0.0.1 standing in for cloud machines, with fault controls."""
