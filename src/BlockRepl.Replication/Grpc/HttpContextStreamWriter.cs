using Google.Protobuf;
using Microsoft.AspNetCore.Http;

namespace BlockRepl.Replication.Grpc;

/// <summary>The response stream of a server call, written to Kestrel's response body pipe.</summary>
/// <remarks>Not thread-safe by contract: one write at a time, as in Grpc.Core; a concurrent write throws.</remarks>
internal sealed class HttpContextStreamWriter<T> : IServerStreamWriter<T>
    where T : class, IMessage<T>
{
    private readonly HttpResponse _response;
    private readonly ServerCallContext _context;
    private readonly int _maxMessageSize;
    private int _writing;

    public HttpContextStreamWriter(HttpResponse response, ServerCallContext context, int maxMessageSize)
    {
        _response = response;
        _context = context;
        _maxMessageSize = maxMessageSize;
    }

    public async Task WriteAsync(T message, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        if (Interlocked.Exchange(ref _writing, 1) != 0)
        {
            throw new InvalidOperationException("Can't write the message because the previous write is in progress.");
        }

        try
        {
            var size = message.CalculateSize();
            GrpcFraming.CheckSendSize(size, _maxMessageSize);
            var writer = _response.BodyWriter;
            GrpcFraming.WriteMessage(writer, message, size);
            var token = cancellationToken.CanBeCanceled ? cancellationToken : _context.CancellationToken;
            var result = await writer.FlushAsync(token).ConfigureAwait(false);
            if (result.IsCanceled || result.IsCompleted)
            {
                // The client reset the stream: nothing written from here on can arrive.
                throw new OperationCanceledException("The response stream was closed by the client.");
            }
        }
        finally
        {
            Volatile.Write(ref _writing, 0);
        }
    }
}
