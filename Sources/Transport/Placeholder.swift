// The libzmq layer; see Transport.swift.
import CZeroMQ
