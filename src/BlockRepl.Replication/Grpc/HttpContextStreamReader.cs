using System.IO.Pipelines;

namespace BlockRepl.Replication.Grpc;

/// <summary>The request stream of a server call, read from Kestrel's request body pipe.</summary>
internal sealed class HttpContextStreamReader<T> : IAsyncStreamReader<T>
    where T : class, Google.Protobuf.IMessage<T>, new()
{
    private readonly PipeReader _body;
    private readonly ServerCallContext _context;
    private readonly int _maxMessageSize;
    private T? _current;
    private bool _ended;

    public HttpContextStreamReader(PipeReader body, ServerCallContext context, int maxMessageSize)
    {
        _body = body;
        _context = context;
        _maxMessageSize = maxMessageSize;
    }

    public T Current => _current ?? throw new InvalidOperationException("MoveNext has not returned true yet.");

    public async Task<bool> MoveNext(CancellationToken cancellationToken)
    {
        if (_ended)
        {
            return false;
        }

        // The call's own token covers client cancellation and the deadline; link only when the caller adds one.
        CancellationTokenSource? linked = null;
        var token = _context.CancellationToken;
        if (cancellationToken.CanBeCanceled && cancellationToken != token)
        {
            linked = CancellationTokenSource.CreateLinkedTokenSource(token, cancellationToken);
            token = linked.Token;
        }

        try
        {
            var message = await GrpcFraming.ReadMessageAsync(_body, MessageParserCache<T>.Parser, _maxMessageSize, token).ConfigureAwait(false);
            if (message is null)
            {
                _ended = true;
                return false;
            }

            _current = message;
            return true;
        }
        finally
        {
            linked?.Dispose();
        }
    }

    /// <summary>Reads the one request message of a unary call; INTERNAL when there is none or more than one.</summary>
    public async Task<T> ReadSingleAsync()
    {
        if (!await MoveNext(CancellationToken.None).ConfigureAwait(false))
        {
            throw new RpcException(StatusCode.Internal, "Request did not include a message.");
        }

        var message = Current;
        if (await MoveNext(CancellationToken.None).ConfigureAwait(false))
        {
            throw new RpcException(StatusCode.Internal, "Unary request included more than one message.");
        }

        return message;
    }
}
