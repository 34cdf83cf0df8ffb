namespace BlockRepl.Nbd;

/// <summary>
/// The byte stream under one NBD connection. Blocking by design: each connection owns a thread, which
/// keeps a QD1 round trip to one wake-up (see <see cref="NbdServer"/> for why).
/// </summary>
internal interface INbdTransport : IDisposable
{
    /// <summary>Receives at least one byte into <paramref name="buffer"/>; 0 at end of stream.</summary>
    int Receive(Span<byte> buffer);

    /// <summary>Sends all of <paramref name="data"/>.</summary>
    void Send(ReadOnlySpan<byte> data);

    /// <summary>Makes a blocked and every later <see cref="Receive"/> return 0 (server shutdown).</summary>
    void ShutdownReceive();

    /// <summary>Bounds every receive; null means wait forever. Used during the handshake.</summary>
    TimeSpan? ReceiveTimeout { set; }
}
