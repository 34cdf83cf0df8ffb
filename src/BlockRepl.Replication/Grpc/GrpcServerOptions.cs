namespace BlockRepl.Replication.Grpc;

/// <summary>Limits of the server side, read from DI (<c>services.Configure&lt;GrpcServerOptions&gt;</c>).</summary>
internal sealed class GrpcServerOptions
{
    public const int DefaultMaxReceiveMessageSize = 4 * 1024 * 1024;

    /// <summary>
    /// The largest request message accepted, checked from the length prefix before any of the message is
    /// buffered; larger ones end the call with RESOURCE_EXHAUSTED. Default 4 MiB, as in standard gRPC.
    /// </summary>
    public int MaxReceiveMessageSize { get; set; } = DefaultMaxReceiveMessageSize;

    /// <summary>The largest response message a handler may write (RESOURCE_EXHAUSTED beyond). Default: no limit.</summary>
    public int MaxSendMessageSize { get; set; } = int.MaxValue - GrpcFraming.HeaderSize;
}
